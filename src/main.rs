//! `containerd-shim-wedge-v2`: argv → [`wedge::cli::run`].

fn main() {
    std::process::exit(wedge::cli::run());
}
