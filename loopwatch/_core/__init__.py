"""The watchdog's parts, each with one job (private: nothing here is public API)."""
