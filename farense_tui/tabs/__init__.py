"""The five tabs, one module each."""
