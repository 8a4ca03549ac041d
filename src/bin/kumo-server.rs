fn main() {
    eprintln!("kumo-server: not built yet");
    std::process::exit(2);
}
