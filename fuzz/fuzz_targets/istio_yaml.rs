//! Arbitrary manifest text must never panic the loader; every object it returns must pass
//! validation again, and every problem must say where and what.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (objects, problems) = mesh::load_str(text, None);
    for object in &objects {
        let errors: Vec<_> = mesh::validate::object(object)
            .into_iter()
            .filter(|p| p.severity == mesh::Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", object.describe());
    }
    for p in &problems {
        assert!(!p.problem.message.is_empty());
        assert!(p.object.is_some(), "every problem names its object or document: {p}");
    }
});
