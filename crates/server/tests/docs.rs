//! ARCHITECTURE.md stays true: every `crates/…` path it names exists.

#[test]
fn architecture_names_only_paths_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut named = 0;
    let mut crate_dir = None;
    for (i, chunk) in text.split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        let path = if chunk.starts_with("crates/") {
            chunk.to_string()
        } else if chunk.starts_with("src/") || chunk.starts_with("migrations/") {
            // Relative to the crate section it appears in.
            match &crate_dir {
                Some(dir) => format!("{dir}/{chunk}"),
                None => continue,
            }
        } else {
            continue;
        };
        let path = path.trim_end_matches('/');
        if chunk.starts_with("crates/") && !chunk.contains("/src") {
            crate_dir = Some(path.to_string());
        }
        assert!(
            root.join(path).exists(),
            "ARCHITECTURE.md names {path}, which does not exist"
        );
        named += 1;
    }
    assert!(
        named > 10,
        "expected ARCHITECTURE.md to name the code's paths"
    );
}
