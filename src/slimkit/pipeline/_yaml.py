"""YAML that remembers where each value came from, so a recipe error can name its line.

PyYAML's composer keeps a start mark on every node; we build the plain Python data from the node tree ourselves and,
alongside it, a map from each value's path (``("stages", 2, "prune", "ratio")``) to its 1-based line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slimkit._errors import ConfigError

Path = tuple[Any, ...]

#: a recipe is a page of YAML; these bounds keep a hostile file (an alias bomb, megabytes of text, deep nesting)
#: from hanging or exhausting memory before it is rejected
MAX_RECIPE_BYTES = 1_000_000
MAX_VALUES = 100_000
MAX_DEPTH = 64


class RecipeError(ConfigError):
    """A recipe file is malformed or invalid; the message names the file, the line and the fix."""


@dataclass
class LocatedYaml:
    """Parsed YAML data plus the line of every mapping key and sequence item (1-based)."""

    data: Any
    lines: dict[Path, int] = field(default_factory=dict)
    source: str = "<recipe>"

    def line_of(self, path: Path) -> int:
        """The line of ``path``, or of its nearest ancestor that has one (a missing key points at its parent)."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)


def _hashable(key: Any) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True


def load_located_yaml(text: str, source: str = "<recipe>") -> LocatedYaml:
    """Parse one YAML document with the safe loader and record the line of every key and item.

    Raises :class:`RecipeError` (with file and line) for a syntax error, several documents, a duplicate key or a
    key that is not a plain scalar; never lets a ``yaml`` exception escape.
    """
    import yaml

    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{source}: the recipe is {len(text):,} characters long; a recipe is a short YAML file "
                          f"(at most {MAX_RECIPE_BYTES:,}): check that this is the file you meant")
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as error:  # a character YAML does not allow (ReaderError)
        detail = " ".join(str(error).split())
        raise RecipeError(f"{source}: the file holds a character YAML does not allow ({detail}): remove it") from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            line = mark.line + 1 if mark is not None else 1
            problem = error.problem or error.context or "invalid YAML"
            if "another document" in problem:
                raise RecipeError(f"{source}, line {line}: a recipe is a single YAML document: remove the second "
                                  "document (from this '---' on) or put it in its own file") from None
            raise RecipeError(f"{source}, line {line}: YAML syntax error: {problem}: fix the YAML syntax there "
                              "(indentation, quotes, ':' after each key)") from None
        except yaml.YAMLError as error:
            detail = " ".join(str(error).split())
            raise RecipeError(f"{source}: cannot parse YAML ({detail}): fix the file's syntax") from None
        except RecursionError:
            raise RecipeError(f"{source}: the YAML is nested too deeply to be a recipe (a recipe nests a few levels): "
                              "check the brackets and indentation") from None
        if node is None:
            raise RecipeError(f"{source}, line 1: the recipe is empty: start it with 'version: 1' and a 'model:' "
                              "section (see recipes/*.yaml)")
        located = LocatedYaml(data=None, lines={(): node.start_mark.line + 1}, source=source)
        located.data = _build(loader, node, (), located, set(), [0])
        return located
    finally:
        loader.dispose()


def _build(loader: Any, node: Any, path: Path, located: LocatedYaml, active: set[int], count: list[int]) -> Any:
    import yaml

    line = node.start_mark.line + 1
    count[0] += 1
    if count[0] > MAX_VALUES:
        raise RecipeError(f"{located.source}, line {line}: the recipe expands to more than {MAX_VALUES:,} values "
                          "(YAML aliases repeating aliases?): write the values out; a recipe needs a few dozen")
    if len(path) > MAX_DEPTH:
        raise RecipeError(f"{located.source}, line {line}: values nested more than {MAX_DEPTH} levels deep: a recipe "
                          "nests a few levels; check the brackets and indentation")
    if id(node) in active:
        raise RecipeError(f"{located.source}, line {line}: an alias refers to itself (a cyclic structure): "
                          "write the value out instead of using a recursive anchor")
    if isinstance(node, yaml.MappingNode):
        active.add(id(node))
        try:
            loader.flatten_mapping(node)  # resolves '<<' merge keys like the safe loader would
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key_line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode):
                    raise RecipeError(f"{located.source}, line {key_line}: a key must be a plain name, not a "
                                      "list or mapping: write 'name: value'")
                key = _scalar(loader, key_node, located)
                if not _hashable(key):
                    raise RecipeError(f"{located.source}, line {key_line}: key {key!r} cannot be used as a name")
                if key in result:
                    raise RecipeError(f"{located.source}, line {key_line}: key '{key}' appears twice in the same "
                                      "section: keep only one")
                located.lines[(*path, key)] = key_line
                result[key] = _build(loader, value_node, (*path, key), located, active, count)
            return result
        finally:
            active.discard(id(node))
    if isinstance(node, yaml.SequenceNode):
        active.add(id(node))
        try:
            items = []
            for index, item in enumerate(node.value):
                located.lines[(*path, index)] = item.start_mark.line + 1
                items.append(_build(loader, item, (*path, index), located, active, count))
            return items
        finally:
            active.discard(id(node))
    return _scalar(loader, node, located)


def _scalar(loader: Any, node: Any, located: LocatedYaml) -> Any:
    import yaml

    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as error:
        line = node.start_mark.line + 1
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError(f"{located.source}, line {line}: cannot read this value ({problem}): use a plain number, "
                          "string, true/false or null") from None
    except (ValueError, TypeError, OverflowError) as error:
        line = node.start_mark.line + 1
        raise RecipeError(f"{located.source}, line {line}: cannot read this value ({error}): use a plain number, "
                          "string, true/false or null") from None
