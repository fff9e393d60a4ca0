fn main() {
    eprintln!("ringmq: not yet runnable");
    std::process::exit(1);
}
