"""The engine every method shares: the batched sweep (`sweep`), forward helpers (`forward`), batching (`batching`)
and chunk persistence (`chunks`). Methods import from here; nothing here imports a method."""
