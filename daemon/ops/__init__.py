"""The application surface: the commands and queries that the API, the UI and the CLI call."""
