"""Node pools: machines ninefold creates, fences and replaces through a provider."""
