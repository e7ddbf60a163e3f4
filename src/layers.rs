//! The crate's layering, checked: every module has a layer, and a module imports only modules
//! of lower layers — so there is no import circle, formats sit below their producers,
//! inference below training and shared plumbing below every stage that uses it
//! (ARCHITECTURE.md, "Layers"). A new module must be placed here; the test reads the sources.

/// Module → layer. Lower layers never import higher ones.
pub const LAYERS: &[(&str, u32)] = &[
    // Leaves: no imports from the crate.
    ("ids", 0),
    // The kernel crate `raincheck-nn`, re-exported as `nn`.
    ("nn", 0),
    ("progress", 0),
    ("runtime", 0),
    ("usage", 0),
    // Pixels and files in and out.
    ("image_io", 1),
    // Formats, sinks, pure math.
    ("metrics", 2),
    ("pairing", 2),
    ("video", 2),
    ("viz", 2),
    ("weights", 2),
    // Running networks over media; the rain renderer and `rain::apply`.
    ("infer", 3),
    ("rain", 3),
    // The dataset format (it records rain parameters).
    ("dataset", 4),
    // Plumbing shared by the trainers.
    ("runs", 5),
    ("optim", 6),
    // Model families with their inference and training.
    ("cyclegan", 7),
    ("derain", 7),
    // Stages over the model families.
    ("eval", 8),
    ("generate", 8),
    ("quiz", 8),
    ("realism", 8),
    ("registry", 8),
    ("stream", 8),
    ("study", 9),
    // The binary's command layer (`src/main.rs` + `src/cli/`: clap arguments → library jobs;
    // it reaches the library as `raincheck::`, so only its own `crate::cli` shows here).
    ("cli", 10),
    // Tests only.
    ("fuzz", 11),
    ("layers", 11),
];

#[cfg(test)]
mod tests {
    use super::LAYERS;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    fn layer(m: &str) -> Option<u32> {
        LAYERS.iter().find(|(n, _)| *n == m).map(|(_, l)| *l)
    }

    /// `crate::NAME` references in code (comments left out), by file.
    fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![src.to_path_buf()];
        while let Some(p) = stack.pop() {
            if p.is_dir() {
                stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if p.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = p
                .strip_prefix(src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if rel == "main.rs" || rel == "lib.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let mut used = BTreeSet::new();
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let name: String = line[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        used.insert(name);
                    }
                }
            }
            out.insert(rel, used);
        }
        out
    }

    #[test]
    fn no_module_imports_a_higher_or_equal_layer() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut problems = Vec::new();
        for (file, used) in imports(&src) {
            let module = file.split(['/', '.']).next().unwrap().to_string();
            let Some(own) = layer(&module) else {
                problems.push(format!(
                    "{file}: module `{module}` has no layer in src/layers.rs"
                ));
                continue;
            };
            for dep in used.iter().filter(|d| **d != module) {
                match layer(dep) {
                    None => problems.push(format!("{file}: imports `{dep}`, which has no layer")),
                    Some(l) if l >= own => problems.push(format!(
                        "{file}: `{module}` (layer {own}) imports `{dep}` (layer {l})"
                    )),
                    Some(_) => {}
                }
            }
        }
        assert!(
            problems.is_empty(),
            "layering broken:\n{}",
            problems.join("\n")
        );
    }

    /// The check sees imports: a file that reaches up is caught.
    #[test]
    fn the_check_catches_an_upward_import() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("ids.rs"),
            "use crate::study::run;\n// crate::eval\n",
        )
        .unwrap();
        let got = imports(t.path());
        assert_eq!(got["ids.rs"], BTreeSet::from(["study".to_string()]));
        assert!(layer("study").unwrap() > layer("ids").unwrap());
    }
}
