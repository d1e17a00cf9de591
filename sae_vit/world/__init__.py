"""The built-in synthetic world (scenes, tasks, export) and the toy CLIP (model, file, training recipe)."""
