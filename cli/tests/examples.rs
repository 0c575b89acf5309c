//! Every config under `examples/` converts and passes the filter's own validation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use llmgw::model::{AnyEnv, Format, MapEnv};
use llmgw::{formats, validate};

#[test]
fn example_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    // Warnings expected with no variable set: the ones the example's README explains.
    let cases = [
        ("multi-provider/config.yaml", None, 3, &[][..]),
        (
            "envoy-ai-gateway/ollama.yaml",
            None,
            1,
            &["environment variable OPENAI_API_KEY is not set", "stringData.apiKey: the value is empty"][..],
        ),
        ("aibrix/endpoints.yaml", Some(Format::AIBrix), 1, &[][..]),
    ];
    for (file, format, backends, warnings) in cases {
        let path = root.join(file);
        // No variables set: every other ${VAR} in the examples has a default.
        let g = formats::load(&path, &MapEnv::default(), format).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.warnings.len(), warnings.len(), "{file}: {:?}", g.warnings);
        for (got, want) in g.warnings.iter().zip(warnings) {
            assert!(got.contains(want), "{file}: {got:?} does not say {want:?}");
        }
        assert_eq!(g.upstreams.len(), backends, "{file}");
        validate::validate(&g, &AnyEnv).unwrap_or_else(|e| panic!("{e}"));
    }
    // Consumers' keys come from the environment and a key file next to the config.
    let path = root.join("consumers-budgets/config.yaml");
    let env = MapEnv::from([("OPENAI_API_KEY", "sk-x"), ("TEAM_A_KEYS", "sk-team-a-example-key")]);
    let g = formats::load(&path, &env, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((g.consumers.len(), g.budgets.len(), g.warnings.len()), (2, 2, 0), "{:?}", g.warnings);
    validate::validate(&g, &AnyEnv).unwrap_or_else(|e| panic!("{e}"));
    let every_folder_has_a_readme =
        std::fs::read_dir(&root).unwrap().flatten().filter(|e| e.path().is_dir()).all(|e| {
            let ok = e.path().join("README.md").is_file();
            assert!(ok, "{} has no README.md", e.path().display());
            ok
        });
    assert!(every_folder_has_a_readme);
}
