//! Build-script helper for packages whose binaries, tests or examples link libtorch.
//!
//! `torch-sys` links libtorch but gives the final binary no rpath, and the linker's `--as-needed`
//! drops `libtorch_cuda` because no symbol of ours refers to it, so tch would never see a GPU
//! (DESIGN.md §9). A package that depends on `torch-sys` directly receives the libtorch directory
//! as `DEP_TCH_LIBTORCH_LIB` (torch-sys declares `links = "tch"`); its `build.rs` calls
//! [`link_libtorch`], which embeds that directory as the rpath and keeps `libtorch_cuda` linked
//! when it exists. `rustc-link-arg` reaches only the calling package's own targets, hence one
//! call per package.
//!
//! This crate does no I/O beyond reading the environment and checking one file exists.

use std::path::{Path, PathBuf};

/// Emits the link arguments described in the crate docs. Call it from `build.rs`.
///
/// # Panics
/// When `DEP_TCH_LIBTORCH_LIB` is unset, which means the package forgot to depend on `torch-sys`:
/// a build-time mistake that must stop the build with a clear message.
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(lib_dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        panic!(
            "DEP_TCH_LIBTORCH_LIB is not set: add `torch-sys` (same version as tch's) to this \
             package's [dependencies] so its build script receives libtorch's directory"
        );
    };
    for arg in link_args(&lib_dir, lib_dir.join("libtorch_cuda.so").exists()) {
        println!("{arg}");
    }
}

/// The `cargo:` lines for a libtorch in `lib_dir`; `has_cuda` says whether it ships
/// `libtorch_cuda.so`.
fn link_args(lib_dir: &Path, has_cuda: bool) -> Vec<String> {
    let dir = lib_dir.display();
    let mut args = vec![format!("cargo:rustc-link-arg=-Wl,-rpath,{dir}")];
    if has_cuda {
        args.push(format!("cargo:rustc-link-search=native={dir}"));
        args.push("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed".to_owned());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_only_libtorch_gets_only_an_rpath() {
        let args = link_args(Path::new("/opt/torch/lib"), false);
        assert_eq!(args, ["cargo:rustc-link-arg=-Wl,-rpath,/opt/torch/lib"]);
    }

    #[test]
    fn cuda_libtorch_is_kept_linked() {
        let args = link_args(Path::new("/opt/torch/lib"), true);
        assert_eq!(args.len(), 3);
        assert!(args.iter().any(|a| a.contains("--no-as-needed,-ltorch_cuda,--as-needed")));
        assert!(args.iter().any(|a| a == "cargo:rustc-link-search=native=/opt/torch/lib"));
    }
}
