//! A table of invalid objects (e2e/testdata/invalid/*.yaml) is rejected by the real API server
//! with the message a user should see: the schema's bounds and CEL rules are enforced there,
//! not in a controller.

use edgefleet_e2e::{TestNamespace, apply_object, client, install_crds, repo_root};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    expect: String,
    object: serde_json::Value,
    #[serde(default)]
    update: Option<serde_json::Value>,
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_a_precise_message() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "invalid").await.unwrap();

    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("e2e/testdata/invalid"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut total = 0;
    let mut wrong = Vec::new();
    for file in &files {
        let cases: Vec<Case> =
            serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        for case in cases {
            total += 1;
            let label = format!(
                "{}/{}",
                file.file_name().unwrap().to_string_lossy(),
                case.name
            );
            let rejected = match &case.update {
                None => apply_object(&client, &case.object, Some(&ns.name)).await,
                Some(update) => {
                    if let Err(e) = apply_object(&client, &case.object, Some(&ns.name)).await {
                        wrong.push(format!(
                            "{label}: the valid first object was refused: {e:#}"
                        ));
                        continue;
                    }
                    apply_object(&client, update, Some(&ns.name)).await
                }
            };
            match rejected {
                Ok(_) => wrong.push(format!("{label}: accepted, expected {:?}", case.expect)),
                Err(e) => {
                    let message = format!("{e:#}");
                    if !message.contains(&case.expect) {
                        wrong.push(format!("{label}: expected {:?} in: {message}", case.expect));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {total} cases wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        total >= 15,
        "only {total} invalid cases; the table should cover every kind"
    );
}
