fn main() -> std::process::ExitCode {
    bouncer_tools::cli::main()
}
