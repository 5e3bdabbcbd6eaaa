#[test]
fn scratch() {
    for src in [
        "steps:\n  build:\n    image: busybox\n    needs: [lint, test\n    commands:\n      - make\n",
        "steps:\n  build:\n    image: busybox\n      commands:\n      - make\n",
        "steps:\n  build:\n\timage: busybox\n",
        "a: {b: 1\nc: 2\n",
        "a: \"unterminated\nb: 1\n",
        "a: 1\n  b: 2\n",
        "- a\nb: 1\n",
        "a: *nope\n",
        "a: [1, 2]]\n",
    ] {
        let e = serde_yaml::from_str::<serde_yaml::Value>(src).unwrap_err();
        println!("{:?}\n  {}\n  {:?}", src, e, e.location());
    }
}
