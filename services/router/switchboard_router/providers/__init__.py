"""Provider adapters: one module per wire format, chosen through :mod:`.registry`."""
