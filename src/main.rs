fn main() -> std::process::ExitCode {
    bouncer::cli::main()
}
