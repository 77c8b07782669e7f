from http_helpers import backends, behaviour, gateway, http  # noqa: F401  (fixtures)
