"""Stubs compiled from protos/ by `python -m omad.serve.protogen`. Do not edit by hand."""
