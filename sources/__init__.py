"""Where data comes from: local files and folders (sources.files) and the Hugging Face Hub (sources.hub)."""
