"""The hub's pages: the home page, the create form and their templates."""
