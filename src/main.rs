fn main() -> std::process::ExitCode {
    stylebridge::cli::main()
}
