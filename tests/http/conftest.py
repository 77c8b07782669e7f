from http_helpers import backends, behaviour, gateway, http, http_mesh  # noqa: F401  (fixtures)
