//! Writes one YAML file per CRD into each output directory (default: `crds/` and the CRD chart's
//! `charts/edgefleet-crds/files/`), or checks that they already hold exactly what the code
//! generates (`--check`).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut check = false;
    let mut dirs = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--dir" => match args.next() {
                Some(d) => dirs.push(PathBuf::from(d)),
                None => {
                    eprintln!("crdgen: --dir needs a directory");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!(
                    "crdgen: unknown argument {other:?}; usage: crdgen [--check] [--dir DIR]"
                );
                return ExitCode::from(2);
            }
        }
    }
    if dirs.is_empty() {
        dirs = edgefleet_api::CRD_DIRS.iter().map(PathBuf::from).collect();
    }
    let mut stale = 0;
    for dir in &dirs {
        match run(dir, check) {
            Ok(n) => stale += n,
            Err(e) => {
                eprintln!("crdgen: {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if stale > 0 {
        eprintln!("crdgen: {stale} file(s) differ from the code; run `make crds`");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Returns how many files were stale (with `check`) or rewritten.
fn run(dir: &std::path::Path, check: bool) -> Result<usize, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let mut stale = 0;
    for crd in edgefleet_api::crds() {
        let path = dir.join(edgefleet_api::crd_file_name(&crd));
        let want = edgefleet_api::crd_yaml(&crd)?;
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            if check {
                eprintln!("crdgen: {} is stale", path.display());
                stale += 1;
            } else {
                std::fs::write(&path, want)?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(if check { stale } else { 0 })
}
