// Package python holds gpumesh's Python client package (pyproject.toml and
// gpumesh/, installed with `pip install ./python`) and the Go test that
// installs it into a fresh virtual environment, offline, and runs its
// tests (tests/) against a real GPU host through `gpumesh up --forward` on
// an embedded tailnet. There is no Go API here.
package python
