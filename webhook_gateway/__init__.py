"""Webhook gateway: verifies Clerk/Svix deliveries and forwards them to the service."""
