//! Links this package's tests and binaries against the venv's libtorch with an rpath.
fn main() {
    paretopo_build::link_libtorch();
}
