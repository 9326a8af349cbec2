"""What plugin authors import: the interfaces of event sources and task kinds."""
