//! Durations as Istio's YAML writes them: Go's `time.ParseDuration` syntax (`3m`, `0.5s`,
//! `1h30m`, `500ms`), which istiod accepts through the legacy jsonpb decoder, not only
//! protobuf JSON's `1.5s`.
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A non-negative duration parsed from Go syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    pub fn as_duration(self) -> Duration {
        self.0
    }
}

/// Why a duration string is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("negative durations are not allowed")]
    Negative,
    #[error("missing unit in duration {0:?} (use ns, us, ms, s, m or h)")]
    MissingUnit(String),
    #[error("unknown unit {unit:?} in duration {input:?} (use ns, us, ms, s, m or h)")]
    UnknownUnit { unit: String, input: String },
    #[error("invalid duration {0:?}")]
    Invalid(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

impl std::str::FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let mut rest = input;
        if let Some(r) = rest.strip_prefix('+') {
            rest = r;
        } else if rest.starts_with('-') {
            return Err(DurationError::Negative);
        }
        if rest.is_empty() {
            return Err(DurationError::Empty);
        }
        if rest == "0" {
            return Ok(Self(Duration::ZERO));
        }
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let (number, after) = rest.split_at(number_len);
            if number.is_empty() || number == "." || number.matches('.').count() > 1 {
                return Err(DurationError::Invalid(input.to_string()));
            }
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, next) = after.split_at(unit_len);
            if unit.is_empty() {
                return Err(DurationError::MissingUnit(input.to_string()));
            }
            let scale = unit_nanos(unit).ok_or_else(|| DurationError::UnknownUnit {
                unit: unit.to_string(),
                input: input.to_string(),
            })?;
            total = total
                .checked_add(scaled(number, scale).ok_or_else(|| overflow(input))?)
                .ok_or_else(|| overflow(input))?;
            rest = next;
        }
        let secs = u64::try_from(total / 1_000_000_000).map_err(|_| overflow(input))?;
        Ok(Self(Duration::new(secs, (total % 1_000_000_000) as u32)))
    }
}

fn overflow(input: &str) -> DurationError {
    DurationError::Overflow(input.to_string())
}

/// `number` (digits with an optional fraction) times `scale` nanoseconds, truncated as Go does.
fn scaled(number: &str, scale: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole.checked_mul(scale)?;
    let mut place = scale;
    for digit in fraction.chars() {
        place /= 10;
        if place == 0 {
            break;
        }
        nanos = nanos.checked_add(u128::from(digit.to_digit(10)?) * place)?;
    }
    Some(nanos)
}

impl fmt::Display for GoDuration {
    /// Whole milliseconds where exact (`1500ms`), else nanoseconds: parseable again.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos.is_multiple_of(1_000_000_000) {
            write!(f, "{}s", nanos / 1_000_000_000)
        } else if nanos.is_multiple_of(1_000_000) {
            write!(f, "{}ms", nanos / 1_000_000)
        } else {
            write!(f, "{nanos}ns")
        }
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn d(s: &str) -> Result<Duration, DurationError> {
        s.parse::<GoDuration>().map(|g| g.0)
    }

    #[test]
    fn parses_what_istio_yaml_writes() {
        assert_eq!(d("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(d("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        assert_eq!(d(".5s"), Ok(Duration::from_millis(500)));
    }

    #[test]
    fn refuses_what_go_refuses() {
        assert_eq!(d(""), Err(DurationError::Empty));
        assert_eq!(d("-1s"), Err(DurationError::Negative));
        assert!(matches!(d("5"), Err(DurationError::MissingUnit(_))));
        assert!(matches!(d("1d"), Err(DurationError::UnknownUnit { .. })));
        assert!(matches!(d("1 s"), Err(DurationError::UnknownUnit { .. })));
        assert!(matches!(d("1..2s"), Err(DurationError::Invalid(_))));
        assert!(matches!(d("s"), Err(DurationError::Invalid(_))));
        assert!(matches!(
            d("99999999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    proptest! {
        #[test]
        fn display_parses_back(nanos in 0u64..10_000_000_000_000) {
            let g = GoDuration(Duration::from_nanos(nanos));
            prop_assert_eq!(g.to_string().parse::<GoDuration>(), Ok(g));
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,24}") {
            let _ = s.parse::<GoDuration>();
        }
    }
}
