"""Rules: rule expressions evaluated in Python with PostgreSQL's semantics, and read rules
compiled to scopes.

Import from the submodules (this package imports nothing, so that `config.expressions`
can read the function table without loading the evaluator):

- `pgvalues`: PostgreSQL values — the types, text input and output, comparison, kinds;
- `pgarithmetic`: `+ - * /`, negation, `||`;
- `pgcasts`: `::type` casts;
- `pglike`: LIKE pattern matching;
- `functions`: the ONE table of allowed functions (the config's allow-list and the
  evaluator both read it);
- `nodes`: what the rules read from a checked expression's pglast tree;
- `closures`: the closures an evaluator is made of (three-valued logic, IN, ANY, ...);
- `evaluator`: `compile_evaluator`, `evaluate`, `EvaluationError`;
- `scopes`: `compile_read_rule`, `ReadRule`.

The write side binds claims into a rule's SQL with `sidecar.write_sql.bind_claims`.
"""
