!> The description of one layer as it stands in a model file: a type name, attributes
!> (key -> text) and named tensors. Layers build themselves from it and describe themselves
!> into it, so one reader and one writer serve every layer type, custom ones included.
module colnn_spec
  use colnn_kinds, only: wp, dp, i8
  use colnn_status
  use colnn_strings, only: str, real_to_str, parse_int, parse_real_dp, parse_logical
  use colnn_activations, only: activation_t, parse_activation
  implicit none
  private

  public :: layer_spec_t, attribute_t, tensor_t

  type :: attribute_t
    character(len=:), allocatable :: key
    character(len=:), allocatable :: value
    integer :: line = 0
    logical :: used = .false.
  end type attribute_t

  !> A tensor as written in the file: shape (d1[, d2]) in row-major order, values flat.
  type :: tensor_t
    character(len=:), allocatable :: name
    integer :: rank = 1
    integer :: shape(2) = [0, 1]
    real(wp), allocatable :: values(:)
    integer :: line = 0
    logical :: used = .false.
  end type tensor_t

  type :: layer_spec_t
    character(len=:), allocatable :: type_name
    character(len=:), allocatable :: source    !< file the spec came from (for messages)
    integer :: line = 0                          !< line of its 'layer' statement
    integer :: n_attrs = 0, n_tensors = 0
    type(attribute_t), allocatable :: attrs(:)
    type(tensor_t), allocatable :: tensors(:)
  contains
    procedure :: where => spec_where
    procedure :: add_attr => spec_add_attr
    procedure :: add_tensor => spec_add_tensor
    procedure :: set_int => spec_set_int
    procedure :: set_real => spec_set_real
    procedure :: set_logical => spec_set_logical
    procedure :: set_text => spec_set_text
    procedure :: set_tensor_1d => spec_set_tensor_1d
    procedure :: set_tensor_2d => spec_set_tensor_2d
    procedure :: find_attr => spec_find_attr
    procedure :: find_tensor => spec_find_tensor
    procedure :: get_int => spec_get_int
    procedure :: get_real => spec_get_real
    procedure :: get_logical => spec_get_logical
    procedure :: get_text => spec_get_text
    procedure :: get_activation => spec_get_activation
    procedure :: get_vector => spec_get_vector
    procedure :: get_matrix_t => spec_get_matrix_t
    procedure :: check_all_used => spec_check_all_used
  end type layer_spec_t

contains

  !> 'file:line: layer TYPE' prefix for messages.
  function spec_where(self, line) result(s)
    class(layer_spec_t), intent(in) :: self
    integer, intent(in), optional :: line
    character(len=:), allocatable :: s
    integer :: l
    l = self%line
    if (present(line)) l = line
    s = ''
    if (allocated(self%source)) s = self%source
    if (l > 0) s = s//':'//str(l)
    if (len(s) > 0) s = s//': '
    if (allocated(self%type_name)) s = s//"layer '"//self%type_name//"'"
  end function spec_where

  subroutine spec_add_attr(self, key, value, line)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: key, value
    integer, intent(in) :: line
    type(attribute_t), allocatable :: tmp(:)
    if (.not. allocated(self%attrs)) allocate (self%attrs(8))
    if (self%n_attrs == size(self%attrs)) then
      allocate (tmp(2 * size(self%attrs)))
      tmp(1:self%n_attrs) = self%attrs(1:self%n_attrs)
      call move_alloc(tmp, self%attrs)
    end if
    self%n_attrs = self%n_attrs + 1
    self%attrs(self%n_attrs)%key = key
    self%attrs(self%n_attrs)%value = value
    self%attrs(self%n_attrs)%line = line
  end subroutine spec_add_attr

  !> Appends a tensor; `values` is moved in (it is deallocated on return).
  subroutine spec_add_tensor(self, name, rank, shape, values, line)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: name
    integer, intent(in) :: rank, shape(2), line
    real(wp), allocatable, intent(inout) :: values(:)
    type(tensor_t), allocatable :: tmp(:)
    if (.not. allocated(self%tensors)) allocate (self%tensors(4))
    if (self%n_tensors == size(self%tensors)) then
      allocate (tmp(2 * size(self%tensors)))
      tmp(1:self%n_tensors) = self%tensors(1:self%n_tensors)
      call move_alloc(tmp, self%tensors)
    end if
    self%n_tensors = self%n_tensors + 1
    associate (t => self%tensors(self%n_tensors))
      t%name = name
      t%rank = rank
      t%shape = shape
      t%line = line
      call move_alloc(values, t%values)
    end associate
  end subroutine spec_add_tensor

  subroutine spec_set_int(self, key, v)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: key
    integer, intent(in) :: v
    call self%add_attr(key, str(v), 0)
  end subroutine spec_set_int

  subroutine spec_set_real(self, key, v)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: key
    real(wp), intent(in) :: v
    call self%add_attr(key, real_to_str(v), 0)
  end subroutine spec_set_real

  subroutine spec_set_logical(self, key, v)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: key
    logical, intent(in) :: v
    if (v) then
      call self%add_attr(key, 'true', 0)
    else
      call self%add_attr(key, 'false', 0)
    end if
  end subroutine spec_set_logical

  subroutine spec_set_text(self, key, v)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: key, v
    call self%add_attr(key, v, 0)
  end subroutine spec_set_text

  subroutine spec_set_tensor_1d(self, name, v)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: name
    real(wp), intent(in) :: v(:)
    real(wp), allocatable :: flat(:)
    flat = v
    call self%add_tensor(name, 1, [size(v), 1], flat, 0)
  end subroutine spec_set_tensor_1d

  !> Stores w(out, in) (the library's layout) as the row-major (in, out) tensor of the file.
  subroutine spec_set_tensor_2d(self, name, w)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: name
    real(wp), intent(in) :: w(:, :)
    real(wp), allocatable :: flat(:)
    flat = reshape(w, [size(w)])
    call self%add_tensor(name, 2, [size(w, 2), size(w, 1)], flat, 0)
  end subroutine spec_set_tensor_2d

  integer function spec_find_attr(self, key) result(k)
    class(layer_spec_t), intent(in) :: self
    character(len=*), intent(in) :: key
    do k = 1, self%n_attrs
      if (self%attrs(k)%key == key) return
    end do
    k = 0
  end function spec_find_attr

  integer function spec_find_tensor(self, name) result(k)
    class(layer_spec_t), intent(in) :: self
    character(len=*), intent(in) :: name
    do k = 1, self%n_tensors
      if (self%tensors(k)%name == name) return
    end do
    k = 0
  end function spec_find_tensor

  !> Looks up a required attribute, or an optional one when `default` is present.
  subroutine lookup(self, key, k, stat, errmsg)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: key
    integer, intent(out) :: k, stat
    character(len=:), allocatable, intent(out) :: errmsg
    stat = COLNN_OK
    errmsg = ''
    k = self%find_attr(key)
    if (k == 0) then
      stat = COLNN_ERR_FORMAT
      errmsg = self%where()//": missing attribute '"//key//"'"
    else
      self%attrs(k)%used = .true.
    end if
  end subroutine lookup

  subroutine spec_get_int(self, key, v, stat, errmsg, min_value)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: key
    integer, intent(out) :: v
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer, intent(in), optional :: min_value
    integer :: k
    integer(i8) :: big
    logical :: ok
    v = 0
    call lookup(self, key, k, stat, errmsg)
    if (stat /= 0) return
    call parse_int(self%attrs(k)%value, big, ok)
    if (ok) ok = big >= -huge(v) .and. big <= huge(v)
    if (ok .and. present(min_value)) ok = big >= min_value
    if (.not. ok) then
      stat = COLNN_ERR_FORMAT
      errmsg = self%where(self%attrs(k)%line)//": bad value '"//self%attrs(k)%value// &
               "' for '"//key//"' (an integer"
      if (present(min_value)) errmsg = errmsg//' >= '//str(min_value)
      errmsg = errmsg//' is expected)'
      return
    end if
    v = int(big)
  end subroutine spec_get_int

  subroutine spec_get_real(self, key, v, stat, errmsg, default)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: key
    real(wp), intent(out) :: v
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    real(wp), intent(in), optional :: default
    integer :: k
    real(dp) :: r
    logical :: ok
    v = 0
    if (present(default) .and. self%find_attr(key) == 0) then
      v = default; stat = COLNN_OK; errmsg = ''; return
    end if
    call lookup(self, key, k, stat, errmsg)
    if (stat /= 0) return
    call parse_real_dp(self%attrs(k)%value, r, ok)
    if (.not. ok) then
      stat = COLNN_ERR_FORMAT
      errmsg = self%where(self%attrs(k)%line)//": bad value '"//self%attrs(k)%value// &
               "' for '"//key//"' (a finite real number is expected)"
      return
    end if
    v = real(r, wp)
  end subroutine spec_get_real

  subroutine spec_get_logical(self, key, v, stat, errmsg)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: key
    logical, intent(out) :: v
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer :: k
    logical :: ok
    v = .false.
    call lookup(self, key, k, stat, errmsg)
    if (stat /= 0) return
    call parse_logical(self%attrs(k)%value, v, ok)
    if (.not. ok) then
      stat = COLNN_ERR_FORMAT
      errmsg = self%where(self%attrs(k)%line)//": bad value '"//self%attrs(k)%value// &
               "' for '"//key//"' (true or false is expected)"
    end if
  end subroutine spec_get_logical

  subroutine spec_get_text(self, key, v, stat, errmsg)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: key
    character(len=:), allocatable, intent(out) :: v
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer :: k
    v = ''
    call lookup(self, key, k, stat, errmsg)
    if (stat /= 0) return
    v = self%attrs(k)%value
  end subroutine spec_get_text

  subroutine spec_get_activation(self, key, act, stat, errmsg)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: key
    type(activation_t), intent(out) :: act
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer :: k
    character(len=:), allocatable :: msg
    call lookup(self, key, k, stat, errmsg)
    if (stat /= 0) return
    call parse_activation(self%attrs(k)%value, act, stat, msg)
    if (stat /= 0) errmsg = self%where(self%attrs(k)%line)//': '//msg
  end subroutine spec_get_activation

  !> A required 1-D tensor of length n.
  subroutine spec_get_vector(self, name, n, v, stat, errmsg)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: name
    integer, intent(in) :: n
    real(wp), allocatable, intent(out) :: v(:)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer :: k
    stat = COLNN_OK
    errmsg = ''
    k = self%find_tensor(name)
    if (k == 0) then
      stat = COLNN_ERR_FORMAT
      errmsg = self%where()//": missing tensor '"//name//"'"
      return
    end if
    associate (t => self%tensors(k))
      t%used = .true.
      if (t%rank /= 1 .or. t%shape(1) /= n) then
        stat = COLNN_ERR_FORMAT
        errmsg = self%where(t%line)//": tensor '"//name//"' has shape "//shape_text(t)// &
                 ', expected ('//str(n)//')'
        return
      end if
      v = t%values
    end associate
  end subroutine spec_get_vector

  !> A required 2-D tensor of file shape (d1, d2), returned transposed as w(d2, d1): a Keras
  !> kernel (in, out) becomes the (out, in) matrix that multiplies (in, columns) inputs.
  subroutine spec_get_matrix_t(self, name, d1, d2, w, stat, errmsg)
    class(layer_spec_t), intent(inout) :: self
    character(len=*), intent(in) :: name
    integer, intent(in) :: d1, d2
    real(wp), allocatable, intent(out) :: w(:, :)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer :: k
    stat = COLNN_OK
    errmsg = ''
    k = self%find_tensor(name)
    if (k == 0) then
      stat = COLNN_ERR_FORMAT
      errmsg = self%where()//": missing tensor '"//name//"'"
      return
    end if
    associate (t => self%tensors(k))
      t%used = .true.
      if (t%rank /= 2 .or. t%shape(1) /= d1 .or. t%shape(2) /= d2) then
        stat = COLNN_ERR_FORMAT
        errmsg = self%where(t%line)//": tensor '"//name//"' has shape "//shape_text(t)// &
                 ', expected ('//str(d1)//', '//str(d2)//')'
        return
      end if
      allocate (w(d2, d1), stat=stat)
      if (stat /= 0) then
        stat = COLNN_ERR_MEMORY
        errmsg = self%where(t%line)//": cannot allocate tensor '"//name//"'"
        return
      end if
      w = reshape(t%values, [d2, d1])
    end associate
  end subroutine spec_get_matrix_t

  function shape_text(t) result(s)
    type(tensor_t), intent(in) :: t
    character(len=:), allocatable :: s
    if (t%rank == 1) then
      s = '('//str(t%shape(1))//')'
    else
      s = '('//str(t%shape(1))//', '//str(t%shape(2))//')'
    end if
  end function shape_text

  !> After a built-in layer has read what it knows, anything left is an error (a typo in a key
  !> must not pass silently).
  subroutine spec_check_all_used(self, stat, errmsg)
    class(layer_spec_t), intent(in) :: self
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer :: k
    stat = COLNN_OK
    errmsg = ''
    do k = 1, self%n_attrs
      if (self%attrs(k)%key == 'name') cycle
      if (.not. self%attrs(k)%used) then
        stat = COLNN_ERR_FORMAT
        errmsg = self%where(self%attrs(k)%line)//": unknown attribute '"//self%attrs(k)%key//"'"
        return
      end if
    end do
    do k = 1, self%n_tensors
      if (.not. self%tensors(k)%used) then
        stat = COLNN_ERR_FORMAT
        errmsg = self%where(self%tensors(k)%line)//": unexpected tensor '"// &
                 self%tensors(k)%name//"'"
        return
      end if
    end do
  end subroutine spec_check_all_used
end module colnn_spec
