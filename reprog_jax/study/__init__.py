"""Many runs: the sweep over networks, methods, datasets and budgets
(`sweep`), the report (`report`) and the paper's claims (`claims`)."""
