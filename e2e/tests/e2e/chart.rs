//! The Helm charts lint clean and what they render is accepted by the real API server
//! (server-side dry run: admission, schema and RBAC validation all run).

use edgefleet_e2e::{client, install_crds, run};

#[test]
fn charts_lint_clean() {
    for chart in ["charts/edgefleet-crds", "charts/edgefleet"] {
        let out = run("helm", &["lint", "--strict", chart], None).unwrap();
        assert!(out.contains("0 chart(s) failed"), "{chart}: {out}");
    }
}

#[tokio::test]
async fn rendered_charts_pass_server_side_dry_run() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    // Release names of their own: cluster-scoped names (ClusterRoles) must not collide with
    // the release other tests install for real.
    for (release, chart) in [
        ("dry-run-crds", "charts/edgefleet-crds"),
        ("dry-run", "charts/edgefleet"),
    ] {
        let rendered = run(
            "helm",
            &["template", release, chart, "--namespace", "default"],
            None,
        )
        .unwrap();
        assert!(rendered.contains("kind:"), "{chart} rendered nothing");
        run(
            "kubectl",
            &[
                "apply",
                "--dry-run=server",
                "--server-side",
                "--field-manager=e2e-dry-run",
                "-f",
                "-",
            ],
            Some(&rendered),
        )
        .unwrap_or_else(|e| panic!("{chart}: {e:#}"));
    }
}
