//! `containerd-shim-husk-v2`: the containerd shim v2 of husk (see `husk_runtime::shim`).

fn main() {
    husk_runtime::shim::main();
}
