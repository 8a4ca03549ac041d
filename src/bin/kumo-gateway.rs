fn main() {
    eprintln!("kumo-gateway: not built yet");
    std::process::exit(2);
}
