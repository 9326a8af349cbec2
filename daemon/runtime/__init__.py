"""The running daemon: intake records events, the runner drives runs and their attempts,
gates park runs for decisions, deadlines and alerts watch them, retention prunes."""
