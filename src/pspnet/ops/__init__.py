"""Operations around the domain code: DVC commands, data imports and changes, the project lock, the tools' environment."""
