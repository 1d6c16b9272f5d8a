"""kopf handlers, registered into an explicit registry by ``register()``: importing them
does nothing."""
