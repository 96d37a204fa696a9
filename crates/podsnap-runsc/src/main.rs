//! podsnap-runsc: containerd's shim runs this as runsc. See the library's docs.

mod gvisor_shim;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args
        .first()
        .is_some_and(|a| a == podsnap_runsc::pod::WAITER_ARG)
    {
        podsnap_runsc::pod::waiter_main(&args[1..]);
    }
    let inv = podsnap_runsc::args::Invocation::parse(args);
    let env = podsnap_runsc::config::Env::from_process();
    // Behind gVisor's shim: pass through, restore at `start` (see gvisor_shim).
    if let Some(code) = gvisor_shim::run(&inv, &env) {
        std::process::exit(code);
    }
    let code = podsnap_runsc::run(&inv, &env);
    std::process::exit(code);
}
