"""Commerce: catalog, carts and holds, drops, orders, Stripe payments and webhooks."""
