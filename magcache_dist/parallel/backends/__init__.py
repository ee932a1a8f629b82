"""Optional third-party attention backends. Each module here is the only place importing its library."""
