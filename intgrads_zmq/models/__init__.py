"""Model loaders and adapters. Import submodules directly; this package
imports nothing heavy so that torch-free processes can use :mod:`.spec`."""
