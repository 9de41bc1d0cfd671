//! What a client holds of each name (delta: what it was told; state of the world: what it was
//! sent), kept as the publication it was last brought up to date with plus the names where it
//! differs: a stream in step with the server costs a pointer and a handful of exceptions instead
//! of a map of every resource it holds.
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::resource::Publication;

/// What the client was last told about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Told {
    Has(Arc<str>),
    DoesNotExist,
}

/// The told-state of every name. Without an exception, a name the stream wants was told its
/// version in `base` if `base` has it, and nothing otherwise. The stream writes an exception
/// whenever what it tells, forgets or subscribes departs from that rule, and the caller flattens
/// the ledger before the rule's notion of "wants" changes under it (a wildcard toggle).
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    base: Option<Arc<Publication>>,
    /// `None`: told nothing, whatever `base` says.
    exceptions: BTreeMap<Arc<str>, Option<Told>>,
}

impl Ledger {
    fn by_base(&self, name: &str, wanted: bool) -> Option<Told> {
        let r = self.base.as_ref()?.resources.get(name).filter(|_| wanted)?;
        Some(Told::Has(r.version.clone()))
    }

    /// What the client was told about `name`; `wanted` is whether the stream wants it.
    pub(crate) fn get(&self, name: &str, wanted: bool) -> Option<Told> {
        match self.exceptions.get(name) {
            Some(told) => told.clone(),
            None => self.by_base(name, wanted),
        }
    }

    /// Records what the client now knows of `name` (`None`: nothing).
    pub(crate) fn set(&mut self, name: Arc<str>, told: Option<Told>) {
        self.exceptions.insert(name, told);
    }

    /// Every name the client was told something about.
    pub(crate) fn told_names(&self, wants: impl Fn(&str) -> bool) -> Vec<Arc<str>> {
        let from_base = self.base.iter().flat_map(|b| b.resources.values());
        let from_base = from_base
            .filter(|r| wants(&r.name) && !self.exceptions.contains_key(&*r.name))
            .map(|r| r.name.clone());
        let explicit = self
            .exceptions
            .iter()
            .filter(|(_, t)| t.is_some())
            .map(|(n, _)| n.clone());
        from_base.chain(explicit).collect()
    }

    /// Turns what `base` implies into exceptions and drops `base`, so a change of what the
    /// stream wants cannot change what the ledger says was told.
    pub(crate) fn flatten(&mut self, wants: impl Fn(&str) -> bool) {
        if let Some(base) = self.base.take() {
            for r in base.resources.values().filter(|r| wants(&r.name)) {
                self.exceptions
                    .entry(r.name.clone())
                    .or_insert_with(|| Some(Told::Has(r.version.clone())));
            }
        }
    }

    /// Makes `next` the base. The caller has just brought the client up to date with `next`,
    /// so every wanted name where `next` and the old base differ now has an exception; only
    /// the exceptions need looking at, and those that `next` now implies are dropped.
    pub(crate) fn rebase(&mut self, next: &Arc<Publication>, wants: impl Fn(&str) -> bool) {
        self.base = Some(next.clone());
        let exceptions = std::mem::take(&mut self.exceptions);
        for (name, told) in exceptions {
            if self.by_base(&name, wants(&name)) != told {
                self.exceptions.insert(name, told);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn exceptions(&self) -> usize {
        self.exceptions.len()
    }
}
