//! Links this package's binaries and tests against the venv's libtorch with an rpath.
fn main() {
    paretopo_build::link_libtorch();
}
