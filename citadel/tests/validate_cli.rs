//! `citadel validate -f`: exit status and messages, with no server running.
use std::process::Command;

const GOOD: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v2}
      weight: 10
";

fn validate(args: &[&std::path::Path]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_citadel"));
    cmd.arg("validate");
    for a in args {
        cmd.arg("-f").arg(a);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn valid_files_and_directories_pass_and_errors_fail_with_the_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, GOOD).unwrap();
    let (code, out, err) = validate(&[&good]);
    assert_eq!(
        (code, out.trim(), err.as_str()),
        (0, "1 object(s) valid", "")
    );

    let bad_dir = dir.path().join("config");
    std::fs::create_dir(&bad_dir).unwrap();
    std::fs::write(
        bad_dir.join("vs.yaml"),
        GOOD.replace("weight: 10", "weight: 101"),
    )
    .unwrap();
    std::fs::write(
        bad_dir.join("mesh.yaml"),
        "outboundTrafficPolicy: {mode: SOMETIMES}\n",
    )
    .unwrap();
    let (code, out, err) = validate(&[&good, &bad_dir]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    let vs = bad_dir.join("vs.yaml");
    assert!(
        err.contains(&format!(
            "{}: VirtualService bookinfo/reviews: spec.http[0].route[1].weight: must be 0..=100",
            vs.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("mesh.yaml: outboundTrafficPolicy.mode: unknown variant `SOMETIMES`"),
        "{err}"
    );
    assert!(
        err.contains("error: 2 error(s); nothing was applied"),
        "{err}"
    );

    let (code, _, err) = validate(&[&dir.path().join("missing.yaml")]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.yaml: cannot read"), "{err}");
}
