"""What a job may reach on the host: paths and images, domain and network XML."""
