fn main() {
    eprintln!("kumo-manager: not built yet");
    std::process::exit(2);
}
