//! `crds/` is generated from the Rust types and checked in; this fails when they drift apart.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;

#[test]
fn checked_in_crds_match_the_code() {
    for dir in edgefleet_api::CRD_DIRS {
        check_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(dir),
        );
    }
}

fn check_dir(dir: &Path) {
    let mut stale = Vec::new();
    let mut expected_files = Vec::new();
    for crd in edgefleet_api::crds() {
        let file = edgefleet_api::crd_file_name(&crd);
        let want = edgefleet_api::crd_yaml(&crd).unwrap();
        let have = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
        if have != want {
            stale.push(file.clone());
        }
        expected_files.push(file);
    }
    assert!(
        stale.is_empty(),
        "{} is out of date for {stale:?}: run `make crds` and commit the result",
        dir.display()
    );

    // A file for a CRD that no longer exists would still be installed by the chart.
    let mut extra: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".yaml") && !expected_files.contains(f))
        .collect();
    extra.sort();
    assert!(
        extra.is_empty(),
        "{} has files no type generates: {extra:?}",
        dir.display()
    );
}
