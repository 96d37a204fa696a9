//! podsnap-runsc: containerd's shim runs this as runsc. See the library's docs.

fn main() {
    let inv = podsnap_runsc::args::Invocation::parse(std::env::args_os().skip(1).collect());
    let code = podsnap_runsc::run(&inv, &podsnap_runsc::config::Env::from_process());
    std::process::exit(code);
}
