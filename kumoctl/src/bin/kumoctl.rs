fn main() {
    eprintln!("kumoctl: not built yet");
    std::process::exit(2);
}
