//! Resource names shared across streams: a thousand proxies subscribing to the same thousand
//! clusters hold one copy of each name, not a thousand.
use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

static NAMES: LazyLock<Mutex<Names>> = LazyLock::new(Default::default);

#[derive(Default)]
struct Names {
    set: HashSet<Arc<str>>,
    /// The size at which names nobody holds any more are dropped.
    prune_at: usize,
}

/// The shared copy of `name`.
pub fn intern(name: &str) -> Arc<str> {
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.set.get(name) {
        return n.clone();
    }
    if names.set.len() >= names.prune_at {
        names.set.retain(|n| Arc::strong_count(n) > 1);
        names.prune_at = (names.set.len() * 2).max(1024);
    }
    let n: Arc<str> = Arc::from(name);
    names.set.insert(n.clone());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_share_one_allocation() {
        let a = intern("outbound|80||a.example");
        let b = intern(&String::from("outbound|80||a.example"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_ne!(intern("x").as_ptr(), a.as_ptr());
    }
}
