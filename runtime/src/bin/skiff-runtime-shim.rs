//! The shim entry point on its own, for the runtime crate's tests (the `skiff` binary wires
//! `skiff shim …` to the same function).

fn main() {
    skiff_runtime::shim_main(std::env::args().skip(1).collect())
}
