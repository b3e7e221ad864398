"""Who may call: bearer tokens (as settings hold them) and the access policy."""
